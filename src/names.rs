//! Names that become parts of paths and keys: policy, target and snapshot names, read from a
//! policy or from the store (manifests and journals are untrusted input), checked by one rule.

/// Letters, digits, `-`, `_`, `.`; 1 to 64 characters, not starting with `.`: no `/`, no
/// `..` component, no NUL, never absolute, so `scratch.join(name)` stays inside scratch.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `what` as read from `from`, checked with [`valid_name`]: an error naming both otherwise.
pub fn checked<'a>(s: &'a str, what: &str, from: &str) -> anyhow::Result<&'a str> {
    if valid_name(s) {
        Ok(s)
    } else {
        anyhow::bail!(
            "{from}: {what} {s:?} is not a valid name (1-64 letters, digits, '-', '_' or '.', not starting with '.'); refusing to use it"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_names_are_refused() {
        for bad in ["", "..", "../x", "a/b", "/abs", ".hidden", "a\0b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["app", "rent-history", "a.b", "A_1", "20261201T211400.000Z-beef"] {
            assert!(valid_name(good), "{good:?}");
        }
    }
}
