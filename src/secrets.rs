//! Keeping passwords and tokens out of everything guard prints or writes.
//!
//! Values that come from secret-looking environment variables, and passwords found in URLs,
//! are registered here; [`redact`] replaces every registered value in a string. URL passwords
//! are also masked structurally by [`redact_url`], whether registered or not.

use std::sync::{Mutex, OnceLock};

fn registry() -> &'static Mutex<Vec<String>> {
    static R: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remember a secret value so it is redacted from output. Short values are ignored: masking
/// every "1" in the output would help nobody.
pub fn register(value: &str) {
    if value.len() < 4 {
        return;
    }
    let mut r = registry().lock().expect("secrets registry");
    if !r.iter().any(|v| v == value) {
        r.push(value.to_string());
        // Longest first, so a secret containing another is masked whole.
        r.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Register a value expanded from `${name}` if the variable looks like it holds a secret, and
/// the password of any URL in it.
pub fn register_from_env(name: &str, value: &str) {
    let upper = name.to_ascii_uppercase();
    let secretish = ["PASS", "TOKEN", "SECRET", "KEY", "CREDENTIAL", "AUTH"]
        .iter()
        .any(|w| upper.contains(w));
    if secretish {
        register(value);
    }
    if let Some(pw) = url_password(value) {
        register(&pw);
    }
}

/// The password part of `scheme://user:password@host…`, if any.
pub fn url_password(s: &str) -> Option<String> {
    let (_, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// Mask the password of a URL: `postgres://u:***@h/db`.
pub fn redact_url(s: &str) -> String {
    match url_password(s) {
        Some(pw) => s.replacen(&format!(":{pw}@"), ":***@", 1),
        None => s.to_string(),
    }
}

/// Replace every registered secret in `s` with `***`.
pub fn redact(s: &str) -> String {
    let r = registry().lock().expect("secrets registry");
    let mut out = s.to_string();
    for v in r.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

/// Byte-level [`redact`] for command output that may not be UTF-8.
pub fn redact_bytes(b: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let r = registry().lock().expect("secrets registry");
    if r.is_empty() {
        return std::borrow::Cow::Borrowed(b);
    }
    let mut out: Option<Vec<u8>> = None;
    for v in r.iter() {
        let needle = v.as_bytes();
        let hay = out.as_deref().unwrap_or(b);
        if hay.windows(needle.len()).any(|w| w == needle) {
            let mut next = Vec::with_capacity(hay.len());
            let mut i = 0;
            while i < hay.len() {
                if hay[i..].starts_with(needle) {
                    next.extend_from_slice(b"***");
                    i += needle.len();
                } else {
                    next.push(hay[i]);
                    i += 1;
                }
            }
            out = Some(next);
        }
    }
    match out {
        Some(v) => std::borrow::Cow::Owned(v),
        None => std::borrow::Cow::Borrowed(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(url_password("postgres://a:b%40c@h/d").as_deref(), Some("b%40c"));
    }

    #[test]
    fn registered_values_are_masked() {
        register("hunter2-very-secret");
        assert_eq!(redact("pw=hunter2-very-secret;"), "pw=***;");
        assert_eq!(&*redact_bytes(b"x hunter2-very-secret y"), b"x *** y");
    }
}
