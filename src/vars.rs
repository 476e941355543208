//! `${VAR}` in a policy: which variables it uses, and their expansion from the environment.
//!
//! A leaf module (used by the policy loader and by each kind's `config.rs` through
//! [`crate::parse_ctx::ParseCtx`]): values that come from the environment are registered with
//! [`crate::secrets`] when their variable name suggests a secret, so they are masked in output.

use anyhow::{bail, Result};

use crate::secrets;

/// Every `${VAR}` outside comments must be set; report the first missing one with its line.
pub fn check_variables(text: &str, shown: &str) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        let code = strip_comment(line);
        for name in variables(code) {
            match std::env::var(&name) {
                // Secret-looking values are masked in all output, including what hooks, checks
                // and the wrapped command print.
                Ok(value) => secrets::register_from_env(&name, &value),
                Err(_) => bail!(
                    "{shown}:{}: environment variable {name} is not set (the policy uses ${{{name}}})",
                    i + 1
                ),
            }
        }
    }
    Ok(())
}

/// The part of a TOML line before a `#` that is not inside a string.
pub fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, ch) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' && q == '"' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '"' | '\'' => quote = Some(ch),
                '#' => return &line[..i],
                _ => {}
            },
        }
    }
    line
}

/// The names of the `${…}` references in `s`, in order.
pub fn variables(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Expand `${VAR}` from the environment. Values that come from the environment are registered
/// as secrets when their variable name suggests one, so they are redacted from all output.
pub fn expand(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let value = std::env::var(name).unwrap_or_default();
                secrets::register_from_env(name, &value);
                out.push_str(&value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_stripped_outside_strings() {
        assert_eq!(strip_comment("a = \"x # y\" # z"), "a = \"x # y\" ");
        assert_eq!(strip_comment("a = 'x \\' # z"), "a = 'x \\' ");
        assert_eq!(variables("${A} and ${B}c ${"), vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn expansion_replaces_set_variables() {
        std::env::set_var("GUARD_TEST_VARS_X", "ex");
        assert_eq!(
            expand("a${GUARD_TEST_VARS_X}b${GUARD_TEST_VARS_UNSET_Q}c${open"),
            "aexbc${open"
        );
    }
}
