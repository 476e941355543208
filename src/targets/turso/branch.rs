//! Branch names: `guard-<database>-<snapshot id>`, recognisably guard's, traceable to their
//! snapshot, and within Turso's limit on database names.

/// Every database guard creates starts with this.
pub const BRANCH_PREFIX: &str = "guard-";

/// Turso's limit on database names.
pub(super) const MAX_NAME: usize = 64;

/// `20261123T164800.123Z-a3f2` → `20261123t164800123z-a3f2`.
pub(super) fn compact_id(snapshot_id: &str) -> String {
    snapshot_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Is `s` a compact snapshot id (`20261123t164800123z-a3f2`)?
pub(super) fn is_compact_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b't'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'z'
        && b[19] == b'-'
        && b[20..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The part of a database name that goes into a branch name: Turso's alphabet, trimmed so the
/// whole name fits in 64 characters.
pub(super) fn name_part(database: &str) -> String {
    let keep = MAX_NAME - BRANCH_PREFIX.len() - 1 - 24;
    let s: String = database
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(keep)
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "db".into()
    } else {
        s
    }
}

/// The branch database guard creates for `database` in snapshot `snapshot_id`:
/// `guard-<database, truncated>-<snapshot id, compacted>` — lowercase letters, digits and
/// dashes, at most 64 characters.
pub fn branch_name(database: &str, snapshot_id: &str) -> String {
    format!("{BRANCH_PREFIX}{}-{}", name_part(database), compact_id(snapshot_id))
}

/// Is `name` a branch guard created (of any database)?
pub fn is_guard_branch(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.len() > BRANCH_PREFIX.len() + 25
        && name.starts_with(BRANCH_PREFIX)
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && is_compact_id(&name[name.len() - 24..])
        && name.as_bytes()[name.len() - 25] == b'-'
}

/// The snapshot id a guard branch was named after (`20261123T164800.123Z-a3f2`).
pub fn snapshot_id_of_branch(name: &str) -> Option<String> {
    if !is_guard_branch(name) {
        return None;
    }
    let c = &name[name.len() - 24..];
    Some(format!("{}T{}.{}Z-{}", &c[..8], &c[9..15], &c[15..18], &c[20..]))
}

/// Is `name` the branch guard would create for `database` (in some snapshot)?
pub(super) fn is_branch_of(name: &str, database: &str) -> bool {
    snapshot_id_of_branch(name).is_some_and(|id| branch_name(database, &id) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_guards_and_traceable() {
        let id = "20261123T164800.123Z-a3f2";
        let n = branch_name("liveone-tokyo", id);
        assert_eq!(n, "guard-liveone-tokyo-20261123t164800123z-a3f2");
        assert!(is_guard_branch(&n));
        assert_eq!(snapshot_id_of_branch(&n).as_deref(), Some(id));
        assert!(is_branch_of(&n, "liveone-tokyo"));
        assert!(!is_branch_of(&n, "liveone"));
        let long = branch_name(&"x".repeat(80), id);
        assert!(long.len() <= 64 && is_guard_branch(&long), "{long}");
        assert!(is_branch_of(&long, &"x".repeat(80)));
        for not in [
            "liveone-tokyo",
            "guard-liveone-tokyo",
            "guard-x-20261123t164800123z-a3g2",
            "guard--20261123t164800123z-a3f2",
            "Guard-x-20261123t164800123z-a3f2",
        ] {
            assert!(!is_guard_branch(not) || !is_branch_of(not, "x"), "{not}");
        }
        assert!(!is_guard_branch("liveone-tokyo-20261123t164800123z-a3f2"));
    }
}
