//! What a guarded run does once the command has exited and the checks have run: a pure
//! function of three facts, tested on every combination.

use crate::error::Kind;

/// Why a run failed, in the words guard prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The command exited non-zero (or was killed: 128 + signal).
    Exited(i32),
    /// The command exited 0 but a check failed.
    CheckFailed,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Exited(code) => write!(f, "the command exited {code}"),
            Why::CheckFailed => f.write_str("a check failed"),
        }
    }
}

/// What to do after the command and the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything passed: keep the changes, exit 0.
    Keep,
    /// A failure, and `--no-restore`: keep the failed state and exit `exit`.
    KeepFailed { why: Why, exit: u8 },
    /// A failure: rescue the failed state, restore the pre-run snapshot, and exit `exit` when
    /// the restore succeeds.
    Restore { why: Why, exit: u8 },
}

/// The decision for a command that exited `exit` with the checks passing or not. The exit code
/// on a failure is the command's own (passed through; an out-of-range one becomes 1); when the
/// command succeeded but a check failed it is 81 (kept) or 79 (restored).
pub fn decide(exit: i32, checks_ok: bool, no_restore: bool) -> Decision {
    let why = match (exit, checks_ok) {
        (0, true) => return Decision::Keep,
        (0, false) => Why::CheckFailed,
        (code, _) => Why::Exited(code),
    };
    let own = |fallback: Kind| match &why {
        Why::Exited(code) => clamp(*code),
        Why::CheckFailed => fallback.exit_code(),
    };
    if no_restore {
        Decision::KeepFailed {
            exit: own(Kind::KeptFailed),
            why,
        }
    } else {
        Decision::Restore {
            exit: own(Kind::ChecksFailedRestored),
            why,
        }
    }
}

/// A command's exit code as guard's own: 1-255 as is, anything else (a negative code) 1.
fn clamp(code: i32) -> u8 {
    u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_of_exit_checks_and_no_restore() {
        use Decision::*;
        let cases = [
            // exit, checks ok, --no-restore → decision
            (0, true, false, Keep),
            (0, true, true, Keep),
            (
                0,
                false,
                false,
                Restore {
                    why: Why::CheckFailed,
                    exit: 79,
                },
            ),
            (
                0,
                false,
                true,
                KeepFailed {
                    why: Why::CheckFailed,
                    exit: 81,
                },
            ),
            (
                3,
                true,
                false,
                Restore {
                    why: Why::Exited(3),
                    exit: 3,
                },
            ),
            (
                3,
                true,
                true,
                KeepFailed {
                    why: Why::Exited(3),
                    exit: 3,
                },
            ),
            (
                3,
                false,
                false,
                Restore {
                    why: Why::Exited(3),
                    exit: 3,
                },
            ),
            (
                3,
                false,
                true,
                KeepFailed {
                    why: Why::Exited(3),
                    exit: 3,
                },
            ),
        ];
        for (exit, checks_ok, no_restore, want) in cases {
            assert_eq!(
                decide(exit, checks_ok, no_restore),
                want,
                "{exit} {checks_ok} {no_restore}"
            );
        }
    }

    #[test]
    fn the_commands_code_passes_through_and_odd_codes_become_1() {
        let exit = |code| match decide(code, true, false) {
            Decision::Restore { exit, .. } => exit,
            d => panic!("{d:?}"),
        };
        assert_eq!(exit(1), 1);
        assert_eq!(exit(127), 127, "could not start");
        assert_eq!(exit(143), 143, "killed by SIGTERM: 128 + 15");
        assert_eq!(exit(255), 255);
        assert_eq!(exit(256), 1);
        assert_eq!(exit(-1), 1);
        assert_eq!(Why::Exited(143).to_string(), "the command exited 143");
        assert_eq!(Why::CheckFailed.to_string(), "a check failed");
    }
}
