//! The small sections of a policy: its name, `store`, `[retention]`, `[compression]`,
//! `[hooks]` and `[drill]`. Each is one function from its raw table to its value.

use anyhow::Result;
use toml::Spanned;

use super::raw::{RawCompression, RawDrill, RawHooks, RawRetention};
use super::{valid_name, CheckSpec, Drill, Hooks, Retention};
use crate::archive::Compression;
use crate::aws::Sse;
use crate::parse_ctx::fail;
use crate::parse_ctx::{ParseCtx, Seg};
use crate::store::StoreSpec;

/// `name`: used in file names and ids.
pub fn name(raw: &Spanned<String>, cx: &mut ParseCtx) -> Result<String> {
    let name = cx.expand_at(&[Seg::Key("name")], raw.get_ref())?.text;
    if !valid_name(&name) {
        fail!(
            cx,
            @raw.span(),
            "policy name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        );
    }
    Ok(name)
}

/// The `store` key, read: its location, the key that signs manifests, and the server-side
/// encryption an `s3://` store's objects are written with.
#[derive(Default)]
pub struct StoreParts {
    pub path: Option<Spanned<String>>,
    pub key_file: Option<std::path::PathBuf>,
    /// `sse`/`kms_key_id`, with the span of the `[store]` table for a later refusal.
    pub sse: Option<(Sse, std::ops::Range<usize>)>,
}

/// `store = "…"`, or the `[store]` table: its location (`path`), `key_file` (relative to the
/// policy's directory), and for an `s3://` store `sse` and `kms_key_id`.
pub fn store_parts(raw: Option<Spanned<toml::Value>>, cx: &mut ParseCtx) -> Result<StoreParts> {
    let Some(raw) = raw else {
        return Ok(StoreParts::default());
    };
    let span = raw.span();
    match raw.into_inner() {
        toml::Value::String(s) => Ok(StoreParts {
            path: Some(Spanned::new(span, s)),
            ..StoreParts::default()
        }),
        toml::Value::Table(t) => {
            let mut parts = StoreParts::default();
            let (mut sse, mut kms_key_id) = (None, None);
            for (k, v) in t {
                let toml::Value::String(v) = v else {
                    fail!(cx, @span.clone(), "[store] {k} must be a string");
                };
                match k.as_str() {
                    "path" => parts.path = Some(Spanned::new(span.clone(), v)),
                    "key_file" => {
                        let v = cx.expand_at(&[Seg::Key("store"), Seg::Key("key_file")], &v)?.text;
                        if v.is_empty() {
                            fail!(cx, @span.clone(), "[store] key_file is empty");
                        }
                        parts.key_file = Some(cx.resolve(&v));
                    }
                    "sse" => sse = Some(cx.expand_at(&[Seg::Key("store"), Seg::Key("sse")], &v)?.text),
                    "kms_key_id" => {
                        kms_key_id = Some(cx.expand_at(&[Seg::Key("store"), Seg::Key("kms_key_id")], &v)?.text)
                    }
                    _ => fail!(
                        cx,
                        @span.clone(),
                        "[store] has no key {k:?} (it has path, key_file, sse, kms_key_id)"
                    ),
                }
            }
            parts.sse = store_sse(sse, kms_key_id, &span, cx)?.map(|s| (s, span));
            Ok(parts)
        }
        _ => fail!(cx, @span, "store must be a string (a directory or s3://…) or a [store] table"),
    }
}

/// `[store] sse` and `kms_key_id`: the same words and rules as an s3 target's.
fn store_sse(
    sse: Option<String>,
    kms_key_id: Option<String>,
    span: &std::ops::Range<usize>,
    cx: &mut ParseCtx,
) -> Result<Option<Sse>> {
    let kms_key_id = kms_key_id.filter(|k| !k.trim().is_empty());
    let kind = match sse.as_deref() {
        None => None,
        Some(w) => match Sse::CHOICES.iter().find(|(word, _)| *word == w) {
            Some((_, kind)) => *kind,
            None => fail!(cx, @span.clone(), "[store] sse {w:?} must be \"AES256\" or \"aws:kms\""),
        },
    };
    match Sse::pair(kind, kms_key_id) {
        Ok(sse) => Ok(sse),
        Err(why) => fail!(cx, @span.clone(), "[store] {why}"),
    }
}

/// `store`: a local directory (relative to the policy) or `s3://bucket/prefix`; unset is
/// `backups/` beside the policy. `sse` is for an `s3://` store only.
pub fn store(parts: &StoreParts, cx: &mut ParseCtx) -> Result<StoreSpec> {
    let spec = store_location(parts.path.as_ref(), cx)?;
    match (spec, &parts.sse) {
        (StoreSpec::S3 { bucket, prefix, .. }, Some((sse, _))) => Ok(StoreSpec::S3 {
            bucket,
            prefix,
            sse: Some(sse.clone()),
        }),
        (StoreSpec::Local(p), Some((_, span))) => fail!(
            cx,
            @span.clone(),
            "[store] sse is for an s3:// store; {} is a local directory (encrypt it with [encryption], or remove sse)",
            p.display()
        ),
        (spec, None) => Ok(spec),
    }
}

fn store_location(raw: Option<&Spanned<String>>, cx: &mut ParseCtx) -> Result<StoreSpec> {
    let Some(s) = raw else {
        return Ok(StoreSpec::Local(cx.base_dir().join("backups")));
    };
    let v = cx.expand_at(&[Seg::Key("store")], s.get_ref())?.text;
    if let Some(rest) = v.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            fail!(cx, @s.span(), "store {v:?} names no bucket");
        }
        Ok(StoreSpec::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            sse: None,
        })
    } else if v.contains("://") {
        fail!(cx, @s.span(), "store {v:?}: only local directories and s3:// are supported");
    } else if v.is_empty() {
        fail!(cx, @s.span(), "store is empty");
    } else {
        Ok(StoreSpec::Local(cx.resolve(&v)))
    }
}

/// `[retention]`: refuses settings that would keep nothing.
pub fn retention(raw: Option<&RawRetention>, cx: &mut ParseCtx) -> Result<Retention> {
    let mut retention = Retention::default();
    let Some(r) = raw else { return Ok(retention) };
    let mut span = 0..0;
    if let Some(w) = &r.keep_within {
        span = w.span();
        let text = w.get_ref();
        let path = [Seg::Key("retention"), Seg::Key("keep_within")];
        retention.keep_within = humantime::parse_duration(&cx.expand_at(&path, text)?.text)
            .map_err(|e| cx.err_at(w.span(), format!("retention.keep_within {text:?}: {e}")))?;
    }
    if let Some(n) = &r.keep_last {
        span = n.span();
        retention.keep_last = *n.get_ref();
    }
    if retention.keep_last == 0 && retention.keep_within.is_zero() {
        fail!(
            cx,
            @span,
            "retention keeps nothing (keep_last = 0 and keep_within = 0); guard refuses a policy that would prune every snapshot"
        );
    }
    Ok(retention)
}

/// `[compression]`: level 0-9, at least one thread.
pub fn compression(raw: Option<&RawCompression>, cx: &ParseCtx) -> Result<Compression> {
    let mut compression = Compression::default();
    let Some(c) = raw else { return Ok(compression) };
    if let Some(l) = &c.level {
        if *l.get_ref() > 9 {
            fail!(cx, @l.span(), "compression.level {} must be 0-9", l.get_ref());
        }
        compression.level = *l.get_ref();
        compression.level_set = true;
    }
    if let Some(t) = &c.threads {
        if *t.get_ref() == 0 {
            fail!(cx, @t.span(), "compression.threads must be at least 1");
        }
        compression.threads = *t.get_ref();
    }
    Ok(compression)
}

/// `[hooks]`: shell commands. `${VAR}` in them is left for the shell to expand from the
/// environment, so a secret never appears on `sh -c`'s command line; `$${` is a literal `${`.
pub fn hooks(raw: Option<RawHooks>, cx: &mut ParseCtx) -> Result<Hooks> {
    let Some(h) = raw else { return Ok(Hooks::default()) };
    let timeout = match &h.timeout {
        Some(t) => duration(cx, &[Seg::Key("hooks"), Seg::Key("timeout")], t, "hooks.timeout")?,
        None => crate::process::DEFAULT_HOOK_TIMEOUT,
    };
    let mut shell = |key: &'static str, list: Vec<String>| -> Vec<String> {
        let user = format!("hooks.{key}");
        list.iter()
            .enumerate()
            .map(|(i, c)| cx.shell(&[Seg::Key("hooks"), Seg::Key(key), Seg::Index(i)], &user, c))
            .collect()
    };
    Ok(Hooks {
        before: shell("before", h.before),
        after: shell("after", h.after),
        timeout,
    })
}

/// A duration key (`"90s"`, `"10m"`), more than zero.
pub fn duration(cx: &mut ParseCtx, path: &[Seg], t: &toml::Spanned<String>, key: &str) -> Result<std::time::Duration> {
    let text = t.get_ref();
    let value = cx.expand_at(path, text)?.text;
    let d = humantime::parse_duration(&value).map_err(|e| {
        cx.err_at(
            t.span(),
            format!("{key} {text:?}: {e} (write it like \"90s\" or \"10m\")"),
        )
    })?;
    if d.is_zero() {
        return Err(cx.err_at(t.span(), format!("{key} must be more than zero")));
    }
    Ok(d)
}

/// `[drill]`: `max_age`, `on_failure`, and the `[[drill.check]]`s parsed with the others.
pub fn drill(raw: Option<&RawDrill>, checks: Vec<CheckSpec>, cx: &mut ParseCtx) -> Result<Drill> {
    let mut drill = Drill {
        checks,
        ..Drill::default()
    };
    let Some(d) = raw else { return Ok(drill) };
    if let Some(a) = &d.max_age {
        let text = a.get_ref();
        let value = cx.expand_at(&[Seg::Key("drill"), Seg::Key("max_age")], text)?.text;
        drill.max_age = Some(
            humantime::parse_duration(&value)
                .map_err(|e| cx.err_at(a.span(), format!("drill.max_age {text:?}: {e}")))?,
        );
    }
    drill.on_failure =
        (d.on_failure.as_ref()).map(|c| cx.shell(&[Seg::Key("drill"), Seg::Key("on_failure")], "drill.on_failure", c));
    Ok(drill)
}

/// `[encryption]`: every recipient checked (file:line named), `recipients_file` read, paths
/// resolved against the policy's directory. A table with no recipient is refused.
pub fn encryption(
    raw: Option<Spanned<super::raw::RawEncryption>>,
    cx: &mut ParseCtx,
) -> Result<Option<crate::crypt::EncryptionSpec>> {
    use crate::crypt::EncryptionSpec;
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.into_inner();
    let mut recipients = Vec::new();
    for r in &raw.recipients {
        let r = cx.expand_at(&[Seg::Key("encryption"), Seg::Key("recipients")], r)?.text;
        if let Err(e) = EncryptionSpec::check_recipient(&r) {
            fail!(cx, @span.clone(), "[encryption] recipients: {e:#}");
        }
        recipients.push(r.trim().to_string());
    }
    if let Some(f) = &raw.recipients_file {
        let f = cx
            .expand_at(&[Seg::Key("encryption"), Seg::Key("recipients_file")], f)?
            .text;
        match EncryptionSpec::read_recipients_file(&cx.resolve(&f)) {
            Ok(rs) => recipients.extend(rs),
            Err(e) => fail!(cx, @span.clone(), "[encryption] recipients_file: {e:#}"),
        }
    }
    if recipients.is_empty() {
        fail!(cx, @span, "[encryption] names no recipient: add recipients = [\"age1…\"] or recipients_file");
    }
    recipients.dedup();
    let identity_file = match &raw.identity_file {
        Some(f) => {
            let f = cx
                .expand_at(&[Seg::Key("encryption"), Seg::Key("identity_file")], f)?
                .text;
            Some(cx.resolve(&f))
        }
        None => None,
    };
    Ok(Some(EncryptionSpec {
        recipients,
        identity_file,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::raw::{self, RawPolicy};
    use super::*;
    use crate::aws::SseKind;

    /// The raw policy of `text` and a context over it.
    fn parsed(text: &str) -> (RawPolicy, ParseCtx<'_>) {
        let cx = ParseCtx::new(text, Path::new("/nonexistent-guard-p/policy.toml"));
        (raw::from_str(text, &cx).unwrap(), cx)
    }

    fn store_of(raw: super::super::raw::RawPolicy, cx: &mut ParseCtx) -> Result<StoreSpec> {
        let parts = store_parts(raw.store, cx)?;
        store(&parts, cx)
    }

    #[test]
    fn store_forms() {
        let (raw, mut cx) = parsed("name = \"p\"\n");
        let local = |p: &str| StoreSpec::Local(Path::new("/nonexistent-guard-p").join(p));
        assert_eq!(store_of(raw, &mut cx).unwrap(), local("backups"));
        let (raw, mut cx) = parsed("name = \"p\"\nstore = \"snaps\"\n");
        assert_eq!(store_of(raw, &mut cx).unwrap(), local("snaps"));
        let (raw, mut cx) = parsed("name = \"p\"\nstore = \"s3://b/p/q/\"\n");
        let s3 = StoreSpec::S3 {
            bucket: "b".into(),
            prefix: "p/q".into(),
            sse: None,
        };
        assert_eq!(store_of(raw, &mut cx).unwrap(), s3);
        for bad in ["s3://", "ftp://h/x", ""] {
            let text = format!("name = \"p\"\nstore = {bad:?}\n");
            let (raw, mut cx) = parsed(&text);
            let e = store_of(raw, &mut cx).unwrap_err().to_string();
            assert!(e.starts_with("/nonexistent-guard-p/policy.toml:2: store"), "{e}");
        }
        // The [store] table: its path, and a key file relative to the policy.
        let (raw, mut cx) = parsed("name = \"p\"\n[store]\npath = \"snaps\"\nkey_file = \"k/store.key\"\n");
        let parts = store_parts(raw.store, &mut cx).unwrap();
        assert_eq!(store(&parts, &mut cx).unwrap(), local("snaps"));
        assert_eq!(
            parts.key_file,
            Some(Path::new("/nonexistent-guard-p/k/store.key").to_path_buf())
        );
        let (raw, mut cx) = parsed("name = \"p\"\n[store]\nkey_fle = \"k\"\n");
        let e = store_of(raw, &mut cx).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("no key \"key_fle\""), "{e}");
        // sse: an s3:// store's only; the target's words and rules.
        let (raw, mut cx) =
            parsed("name = \"p\"\n[store]\npath = \"s3://b\"\nsse = \"aws:kms\"\nkms_key_id = \"k1\"\n");
        let want = StoreSpec::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            sse: Some(Sse {
                kind: SseKind::Kms,
                kms_key_id: Some("k1".into()),
            }),
        };
        assert_eq!(store_of(raw, &mut cx).unwrap(), want);
        for (bad, says) in [
            ("path = \"snaps\"\nsse = \"AES256\"", "sse is for an s3:// store"),
            (
                "path = \"s3://b\"\nsse = \"aes\"",
                "sse \"aes\" must be \"AES256\" or \"aws:kms\"",
            ),
            (
                "path = \"s3://b\"\nkms_key_id = \"k\"",
                "kms_key_id needs sse = \"aws:kms\"",
            ),
            (
                "path = \"s3://b\"\nsse = \"AES256\"\nkms_key_id = \"k\"",
                "not \"AES256\"",
            ),
        ] {
            let text = format!("name = \"p\"\n[store]\n{bad}\n");
            let (raw, mut cx) = parsed(&text);
            let e = store_of(raw, &mut cx).unwrap_err().to_string();
            assert!(e.contains("policy.toml:2: [store]") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_defaults_and_refusal() {
        let (raw, mut cx) = parsed("name = \"p\"\n");
        assert_eq!(
            retention(raw.retention.as_ref(), &mut cx).unwrap(),
            Retention::default()
        );
        let (raw, mut cx) = parsed("name = \"p\"\n[retention]\nkeep_within = \"2d\"\n");
        let r = retention(raw.retention.as_ref(), &mut cx).unwrap();
        assert_eq!(r.keep_within, Duration::from_secs(2 * 86400));
        let (raw, mut cx) = parsed("name = \"p\"\n[retention]\nkeep_within = \"0s\"\nkeep_last = 0\n");
        let e = retention(raw.retention.as_ref(), &mut cx).unwrap_err().to_string();
        assert!(e.contains("policy.toml:4: retention keeps nothing"), "{e}");
        let (raw, mut cx) = parsed("name = \"p\"\n[retention]\nkeep_within = \"3x\"\n");
        let e = retention(raw.retention.as_ref(), &mut cx).unwrap_err().to_string();
        assert!(e.contains("policy.toml:3: retention.keep_within \"3x\""), "{e}");
    }

    #[test]
    fn compression_limits() {
        let c = |text: &str| {
            let (raw, cx) = parsed(text);
            compression(raw.compression.as_ref(), &cx).map_err(|e| e.to_string())
        };
        let e = c("name = \"p\"\n[compression]\nlevel = 10\n").unwrap_err();
        assert!(e.contains("policy.toml:3: compression.level 10 must be 0-9"), "{e}");
        let e = c("name = \"p\"\n[compression]\nthreads = 0\n").unwrap_err();
        assert!(
            e.contains("policy.toml:3: compression.threads must be at least 1"),
            "{e}"
        );
        let got = c("name = \"p\"\n[compression]\nlevel = 1\nthreads = 3\n").unwrap();
        assert_eq!((got.level, got.threads, got.level_set), (1, 3, true));
        assert!(!c("name = \"p\"\n").unwrap().level_set);
    }

    #[test]
    fn drill_max_age_and_on_failure() {
        let (raw, mut cx) = parsed("name = \"p\"\n[drill]\nmax_age = \"soon\"\n");
        let e = drill(raw.drill.as_ref(), Vec::new(), &mut cx).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent-guard-p/policy.toml:3: drill.max_age \"soon\""),
            "{e}"
        );
        let (raw, mut cx) = parsed("name = \"p\"\n[drill]\nmax_age = \"3d\"\non_failure = \"true\"\n");
        let got = drill(raw.drill.as_ref(), Vec::new(), &mut cx).unwrap();
        assert_eq!(got.max_age, Some(Duration::from_secs(3 * 86400)));
        assert_eq!(got.on_failure.as_deref(), Some("true"));
    }

    #[test]
    fn policy_names_are_checked() {
        let (raw, mut cx) = parsed("name = \"../x\"\n");
        let e = name(&raw.name, &mut cx).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent-guard-p/policy.toml:1: policy name \"../x\""),
            "{e}"
        );
    }
}
