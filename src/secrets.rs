//! Keeping passwords and tokens out of everything guard prints or writes.
//!
//! Values that come from secret-looking environment variables, and passwords found in URLs,
//! are registered here; [`redact`] replaces every registered value in a string. URL passwords
//! (`user:PASSWORD@` and a `password=` query parameter) are also masked structurally, whatever
//! their length and whether registered or not, by [`redact_url`] and by [`redact`].

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

/// The password part of `scheme://user:password@host…`, else the value of a `password=`
/// query parameter, if any.
pub fn url_password(s: &str) -> Option<String> {
    userinfo_password(s).or_else(|| query_passwords(s).first().map(|r| s[r.clone()].to_string()))
}

fn userinfo_password(s: &str) -> Option<String> {
    let (_, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// Byte ranges of the values of `?password=` / `&password=` parameters in `s`.
fn query_passwords(s: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("password=") {
        let at = from + i;
        let start = at + "password=".len();
        if at > 0 && matches!(s.as_bytes()[at - 1], b'?' | b'&') {
            let len = s[start..]
                .find(|c: char| c == '&' || c == '#' || c == '"' || c == '\'' || c == ')' || c.is_whitespace())
                .unwrap_or(s.len() - start);
            if len > 0 {
                out.push(start..start + len);
            }
        }
        from = start;
    }
    out
}

/// Mask the passwords of a URL: `postgres://u:***@h/db`, `…?host=/s&password=***`.
pub fn redact_url(s: &str) -> String {
    let s = match userinfo_password(s) {
        Some(pw) => s.replacen(&format!(":{pw}@"), ":***@", 1),
        None => s.to_string(),
    };
    mask_query_passwords(&s)
}

fn mask_query_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for r in query_passwords(s) {
        out.push_str(&s[last..r.start]);
        out.push_str("***");
        last = r.end;
    }
    out.push_str(&s[last..]);
    out
}

/// Mask every URL password in free text: the userinfo of each `scheme://user:pw@` and each
/// `password=` query parameter.
fn mask_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rsplit_once('@')
            .and_then(|(ui, host)| Some((ui.split_once(':')?, host)))
        {
            Some(((user, pw), host)) if !pw.is_empty() => out.push_str(&format!("{user}:***@{host}")),
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_query_passwords(&out)
}

/// Replace every registered secret in `s` with `***`, and mask URL passwords of any length.
pub fn redact(s: &str) -> String {
    let r = registry().lock().expect("secrets registry");
    let mut out = s.to_string();
    for v in r.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
    }
    drop(r);
    if out.contains("://") || out.contains("password=") {
        out = mask_url_passwords(&out);
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
    fn query_passwords_of_any_length_are_masked() {
        let u = "postgres://shortpw@/rent2?host=/w/pg/sock&password=abc";
        assert_eq!(redact_url(u), "postgres://shortpw@/rent2?host=/w/pg/sock&password=***");
        assert_eq!(url_password(u).as_deref(), Some("abc"));
        assert_eq!(
            redact_url("postgres://h/d?password=x&sslmode=require"),
            "postgres://h/d?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://h/d?oldpassword=x"),
            "postgres://h/d?oldpassword=x"
        );
        assert_eq!(
            redact("cannot reach postgres://u:ab@h/d?password=q7 (and postgres://v@h/e)"),
            "cannot reach postgres://u:***@h/d?password=*** (and postgres://v@h/e)"
        );
        assert_eq!(redact("no urls here"), "no urls here");
    }

    #[test]
    fn registered_values_are_masked() {
        register("hunter2-very-secret");
        assert_eq!(redact("pw=hunter2-very-secret;"), "pw=***;");
        assert_eq!(&*redact_bytes(b"x hunter2-very-secret y"), b"x *** y");
    }
}
