//! The policy file: what to protect, where snapshots go, what to check.
//!
//! A policy is TOML. Parsing is strict: unknown keys and wrong types are errors that name the
//! file and line; `${VAR}` references are expanded from the environment after the file has been
//! checked, and a missing variable is an error naming it and its line. Nothing is run or touched
//! while loading a policy.
//!
//! One file per section: [`raw`] (the TOML shape), [`sections`] (name, store, retention,
//! compression, hooks, drill), [`targets`] (`[[target]]`; each kind's keys are its own
//! `targets/<kind>/config.rs`), [`checks`] (`[[check]]`, `[[drill.check]]`). Every error is
//! located by one [`ParseCtx`].

mod checks;
mod overlap;
mod raw;
pub mod schema;
mod sections;
mod targets;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use checks::{CheckSpec, CheckWhat, Expect, Measure, Op};

use crate::archive::Compression;
use crate::parse_ctx::ParseCtx;
use crate::store::StoreSpec;
use crate::targets::TargetSpec;
use crate::vars::{self, Unresolved};

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// The policy file.
    pub file: PathBuf,
    /// Directory relative paths in the policy are resolved against.
    pub base_dir: PathBuf,
    pub store: StoreSpec,
    /// `[store] key_file`: the store key that signs and checks manifests and journals
    /// ([`crate::auth`]; else `GUARD_STORE_KEY`, else none).
    pub store_key_file: Option<PathBuf>,
    /// `[encryption]`: age recipients for new artifacts, the identity for reading them.
    pub encryption: Option<crate::crypt::EncryptionSpec>,
    pub confirm: bool,
    pub retention: Retention,
    pub compression: Compression,
    pub targets: Vec<TargetSpec>,
    pub hooks: Hooks,
    pub checks: Vec<CheckSpec>,
    pub drill: Drill,
    /// Variables the policy uses that are not set. Commands that open no target (list, show,
    /// status, drills, pin, verify --quick, prune of targets that own nothing outside the store)
    /// work without them; the others call [`Policy::require_env`].
    pub unresolved: Vec<Unresolved>,
}

impl Policy {
    /// Every variable the policy uses must be set: an error naming each one that is not, what
    /// uses it and where (exit 64 at the caller).
    pub fn require_env(&self) -> Result<()> {
        let Some(first) = self.unresolved.first() else {
            return Ok(());
        };
        let mut msg = first.to_string();
        for u in &self.unresolved[1..] {
            msg.push_str(&format!("\n  also {u}"));
        }
        bail!(msg)
    }
}

/// `[drill]`: restore drills.
#[derive(Debug, Clone, Default)]
pub struct Drill {
    /// `guard status` warns when the newest restorable snapshot is older than this.
    pub max_age: Option<Duration>,
    /// Shell command run when a drill fails, with the report's facts in `GUARD_DRILL_*`.
    pub on_failure: Option<String>,
    /// `[[drill.check]]`: checks run against the restored scratch copy.
    pub checks: Vec<CheckSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub keep_within: Duration,
    pub keep_last: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_within: Duration::from_secs(30 * 86400),
            keep_last: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hooks {
    pub before: Vec<String>,
    pub after: Vec<String>,
    /// How long each hook may run (`[hooks] timeout`, default 10 minutes).
    pub timeout: std::time::Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            before: Vec::new(),
            after: Vec::new(),
            timeout: crate::process::DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// Find the policy file the user means.
///
/// `--policy PATH` (an existing file), `--policy NAME` (`policies/NAME.toml`), `$GUARD_POLICY`,
/// or `./guard.toml`, in that order.
pub fn locate(arg: Option<&str>) -> Result<PathBuf> {
    let chosen = match arg {
        Some(a) => Some(a.to_string()),
        None => std::env::var("GUARD_POLICY").ok().filter(|s| !s.is_empty()),
    };
    match chosen {
        Some(p) => {
            let path = PathBuf::from(&p);
            if path.is_file() {
                return Ok(path);
            }
            let named = PathBuf::from("policies").join(format!("{p}.toml"));
            if !p.contains('/') && !p.ends_with(".toml") && named.is_file() {
                return Ok(named);
            }
            bail!(
                "policy {p:?} not found (looked for the file {p:?} and {})",
                named.display()
            )
        }
        None => {
            let path = PathBuf::from("guard.toml");
            if path.is_file() {
                Ok(path)
            } else {
                bail!("no policy given: pass --policy PATH|NAME, set GUARD_POLICY, or create ./guard.toml")
            }
        }
    }
}

/// Read and validate a policy file. A `.env` file beside it is read first: each variable it
/// defines that the environment does not already have is set (the environment wins).
pub fn load(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read policy {}", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    vars::load_guard_env_file()?;
    vars::load_dotenv(dir)?;
    parse(&text, path)
}

/// Parse policy text; `path` names the file in messages and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Policy> {
    let mut cx = ParseCtx::new(text, path);
    let raw = raw::from_str(text, &cx)?;
    let name = sections::name(&raw.name, &mut cx)?;
    let store_parts = sections::store_parts(raw.store, &mut cx)?;
    let store = sections::store(&store_parts, &mut cx)?;
    let store_key_file = store_parts.key_file;
    let retention = sections::retention(raw.retention.as_ref(), &mut cx)?;
    let compression = sections::compression(raw.compression.as_ref(), &cx)?;
    let encryption = sections::encryption(raw.encryption, &mut cx)?;
    let mut targets = targets::parse(raw.target, &mut cx)?;
    overlap::check(&targets, &store, &cx)?;
    overlap::check_targets(&targets, &cx)?;
    let hooks = sections::hooks(raw.hooks, &mut cx)?;
    let drill_checks = raw.drill.as_ref().map(|d| d.check.as_slice()).unwrap_or(&[]);
    let (checks, drill_checks) = checks::parse(&raw.check, drill_checks, &targets, &mut cx)?;
    // A check's unset variables are its target's too: the check is only ever run with it.
    for (c, used) in checks.iter().chain(drill_checks.iter()) {
        if let Some(t) = targets.iter_mut().find(|t| Some(&t.name) == c.target.as_ref()) {
            t.unresolved.extend(used.iter().cloned());
        }
    }
    let checks = checks.into_iter().map(|(c, _)| c).collect();
    let drill_checks = drill_checks.into_iter().map(|(c, _)| c).collect();
    let drill = sections::drill(raw.drill.as_ref(), drill_checks, &mut cx)?;
    Ok(Policy {
        unresolved: cx.unresolved().to_vec(),
        name,
        file: path.to_path_buf(),
        base_dir: cx.base_dir().to_path_buf(),
        store,
        store_key_file,
        encryption,
        confirm: raw.confirm,
        retention,
        compression,
        targets,
        hooks,
        checks,
        drill,
    })
}

/// Names used in file names and ids (one rule for the policy and the store: [`crate::names`]).
pub use crate::names::valid_name;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Policy> {
        parse(text, Path::new("/tmp/x/policy.toml"))
    }

    #[test]
    fn unknown_key_names_line() {
        let e =
            p("name = \"a\"\n\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\npaht = 1\n").unwrap_err();
        let s = format!("{e:#}");
        assert!(s.contains("policy.toml:7"), "{s}");
        assert!(s.contains("paht"), "{s}");
    }

    #[test]
    fn missing_variable_names_it_and_line() {
        let e = p("name = \"a\"\nstore = \"${GUARD_TEST_SURELY_UNSET}\"\n").unwrap_err();
        let s = format!("{e:#}");
        assert!(s.contains(":2:") && s.contains("GUARD_TEST_SURELY_UNSET"), "{s}");
    }

    #[test]
    fn a_set_compression_level_wins_over_a_kinds_default() {
        let t = "[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\n";
        let unset = p(&format!("name = \"a\"\n{t}")).unwrap().compression;
        assert_eq!((unset.level, unset.default_level(2).level), (6, 2));
        let set = p(&format!("name = \"a\"\n[compression]\nlevel = 6\n{t}"))
            .unwrap()
            .compression;
        assert_eq!(set.default_level(2).level, 6);
    }

    #[test]
    fn unset_variables_of_targets_checks_and_hooks_are_deferred_to_the_commands_that_need_them() {
        let pol = p(concat!(
            "name = \"a\"\n",
            "[[target]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"${GUARD_TEST_UNSET_U1}\"\nformat = \"${GUARD_TEST_UNSET_U2}\"\n",
            "[hooks]\nbefore = [\"x\", \"echo ${GUARD_TEST_UNSET_U3} ${A:-b} $${C}\"]\n",
            "[[check]]\nname = \"c\"\ntarget = \"db\"\nsql = \"\"\"\nselect\n${GUARD_TEST_UNSET_U4}\"\"\"\nexpect = \"== 1\"\n",
        ))
        .unwrap();
        let at: Vec<(&str, &str, &str)> = pol
            .unresolved
            .iter()
            .map(|u| (u.var.as_str(), u.at.as_str(), u.user.as_str()))
            .collect();
        assert_eq!(
            at,
            [
                ("GUARD_TEST_UNSET_U1", "/tmp/x/policy.toml:5", "target \"db\""),
                ("GUARD_TEST_UNSET_U2", "/tmp/x/policy.toml:6", "target \"db\""),
                ("GUARD_TEST_UNSET_U3", "/tmp/x/policy.toml:8", "hooks.before"),
                ("GUARD_TEST_UNSET_U4", "/tmp/x/policy.toml:14", "check \"c\""),
            ]
        );
        // The target carries its own and its check's; building it is refused.
        assert_eq!(pol.targets[0].unresolved.len(), 3);
        let e = crate::targets::build(&pol.targets[0]).err().unwrap().to_string();
        assert!(
            e.starts_with("/tmp/x/policy.toml:5: target \"db\" needs environment variable GUARD_TEST_UNSET_U1"),
            "{e}"
        );
        let e = pol.require_env().unwrap_err().to_string();
        assert!(
            e.contains("GUARD_TEST_UNSET_U1") && e.contains("also /tmp/x/policy.toml:14"),
            "{e}"
        );
        assert_eq!(pol.hooks.before[1], "echo ${GUARD_TEST_UNSET_U3} ${A:-b} ${C}");
        // Names and the store are needed by every command.
        let e = p("name = \"a\"\n[[target]]\nname = \"${GUARD_TEST_UNSET_U5}\"\nkind = \"dir\"\npath = \"d\"\n")
            .unwrap_err();
        assert!(
            format!("{e:#}").contains(":3: environment variable GUARD_TEST_UNSET_U5 is not set"),
            "{e:#}"
        );
        let e = p("name = \"a\"\n[[target]]\nname = \"d\"\nkind = \"dir\"\npath = \"${X:-d}\"\n").unwrap_err();
        assert!(
            format!("{e:#}").contains(":5: `${X:-d}`: guard expands only `${NAME}`"),
            "{e:#}"
        );
    }

    #[test]
    fn variables_in_comments_are_ignored() {
        p("name = \"a\" # uses ${NOT_SET_ANYWHERE}\n").unwrap();
    }

    #[test]
    fn expectations_parse() {
        assert_eq!(Expect::parse(">= 4").unwrap(), Expect::Compare(Op::Ge, 4.0));
        assert_eq!(Expect::parse("== 6").unwrap(), Expect::Compare(Op::Eq, 6.0));
        assert_eq!(Expect::parse("<1").unwrap(), Expect::Compare(Op::Lt, 1.0));
        assert_eq!(Expect::parse("unchanged").unwrap(), Expect::Unchanged);
        assert_eq!(Expect::parse("ok").unwrap(), Expect::Literal("ok".into()));
        assert!(Expect::parse(">= x").is_err());
    }

    #[test]
    fn check_must_name_known_target() {
        let e = p("name = \"a\"\n[[check]]\nname = \"c\"\ntarget = \"nope\"\nsql = \"select 1\"\nexpect = \"== 1\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("policy.toml:2"), "{e:#}");
    }

    #[test]
    fn keys_of_other_kinds_are_refused() {
        let e = p("name = \"a\"\n[[target]]\nname = \"db\"\nkind = \"sqlite\"\npath = \"a.db\"\nbucket = \"b\"\n")
            .unwrap_err();
        let s = format!("{e:#}");
        // The key's own line, and the keys the kind takes.
        assert!(
            s.contains("policy.toml:6") && s.contains("`bucket`, expected `path`"),
            "{s}"
        );
    }

    #[test]
    fn s3_tags_mode_parses_and_bad_values_name_the_line() {
        let s3 = |extra: &str| {
            p(&format!(
                "name = \"a\"\n[[target]]\nname = \"img\"\nkind = \"s3\"\nbucket = \"b\"\nclone_bucket = \"c\"\n{extra}"
            ))
        };
        let tags = |pol: Policy| match &pol.targets[0].kind {
            crate::targets::KindSpec::S3(s) => s.tags,
            _ => unreachable!(),
        };
        use crate::targets::S3Tags;
        assert_eq!(tags(s3("").unwrap()), S3Tags::Exact);
        assert_eq!(tags(s3("tags = \"with-content\"\n").unwrap()), S3Tags::WithContent);
        let e = format!("{:#}", s3("tags = \"none\"\n").unwrap_err());
        assert!(e.contains("policy.toml:2") && e.contains("with-content"), "{e}");
    }

    #[test]
    fn postgres_password_is_not_in_debug_output() {
        std::env::set_var("GUARD_TEST_PG_URL", "postgres://app:pw-in-url-123@db/x");
        let pol = p("name = \"a\"\n[[target]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"${GUARD_TEST_PG_URL}\"\n")
            .unwrap();
        let dbg = format!("{pol:?}");
        assert!(!dbg.contains("pw-in-url-123"), "{dbg}");
        assert_eq!(crate::secrets::redact("x pw-in-url-123 y"), "x *** y");
    }

    #[test]
    fn implicit_tables_parse() {
        let pol = p("name = \"a\"\nretention.keep_last = 5\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"a.db\"\n[[drill.check]]\nname = \"c\"\ntarget = \"app\"\nsql = \"select 1\"\nexpect = \"== 1\"\n").unwrap();
        assert_eq!(pol.retention.keep_last, 5);
        assert_eq!(pol.drill.checks.len(), 1);
        let e = p("name = \"a\"\n[drill]\nmax_age = \"soon\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("policy.toml:3"), "{e:#}");
    }

    #[test]
    fn retention_that_keeps_nothing_is_refused() {
        let e = p("name = \"a\"\n[retention]\nkeep_within = \"0s\"\nkeep_last = 0\n").unwrap_err();
        assert!(format!("{e:#}").contains("keeps nothing"));
    }
}
