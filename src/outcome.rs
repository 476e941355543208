//! How a run (or a restore, or a recovery) ended, as journals and the catalog record it.
//!
//! The on-disk strings are part of the store's format and never change meaning: `kept`,
//! `failed-kept`, `restored`, `abandoned`, `kept-after-interrupt`, `recovered`, `accepted`, and
//! for a run that stopped early with an error the [`Kind::as_str`] of that error
//! (`restore_failed`, `snapshot_failed`, …).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Kind;

/// The end of a journaled operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command and every check passed; its changes stay.
    Kept,
    /// The command or a check failed and `--no-restore` kept the failed state.
    FailedKept,
    /// The targets were restored and proven equal to the snapshot.
    Restored,
    /// The operation stopped with an error of this kind (`restore_failed`, `snapshot_failed`, …).
    Failed(Kind),
    /// An interrupted run closed by `recover` before its command had started, or a run stopped
    /// by a signal before its command started: nothing to undo.
    Abandoned,
    /// An interrupted run whose state `recover --keep` accepted.
    KeptAfterInterrupt,
    /// An interrupted or failed run whose pre-run state `recover` put back.
    Recovered,
    /// A failed state (or a failed drill) that `recover --keep` accepted.
    Accepted,
}

const NAMED: [(Outcome, &str); 7] = [
    (Outcome::Kept, "kept"),
    (Outcome::FailedKept, "failed-kept"),
    (Outcome::Restored, "restored"),
    (Outcome::Abandoned, "abandoned"),
    (Outcome::KeptAfterInterrupt, "kept-after-interrupt"),
    (Outcome::Recovered, "recovered"),
    (Outcome::Accepted, "accepted"),
];

impl Outcome {
    /// The string journals and the catalog hold.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Failed(k) => k.as_str(),
            named => NAMED.iter().find(|(o, _)| *o == named).map(|(_, s)| *s).expect("named"),
        }
    }

    /// Read an outcome string back (`None` for a string this guard does not know).
    pub fn parse(s: &str) -> Option<Outcome> {
        NAMED
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(o, _)| *o)
            .or_else(|| Kind::ALL.iter().find(|k| k.as_str() == s).map(|k| Outcome::Failed(*k)))
    }

    /// Did the operation fail (an error, or a failed state kept on purpose)? Whether that left
    /// the targets in a failed state depends on how far it got (see [`crate::attention`]).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::FailedKept | Outcome::Failed(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Outcome::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_disk_strings_are_todays() {
        let cases = [
            (Outcome::Kept, "kept"),
            (Outcome::FailedKept, "failed-kept"),
            (Outcome::Restored, "restored"),
            (Outcome::Abandoned, "abandoned"),
            (Outcome::KeptAfterInterrupt, "kept-after-interrupt"),
            (Outcome::Recovered, "recovered"),
            (Outcome::Accepted, "accepted"),
            (Outcome::Failed(Kind::RestoreFailed), "restore_failed"),
            (Outcome::Failed(Kind::Snapshot), "snapshot_failed"),
            (Outcome::Failed(Kind::Internal), "internal"),
        ];
        for (o, s) in cases {
            assert_eq!(o.as_str(), s);
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Outcome>(&format!("\"{s}\"")).unwrap(), o);
        }
        for k in Kind::ALL {
            assert_eq!(Outcome::parse(k.as_str()), Some(Outcome::Failed(k)), "{k:?}");
        }
        assert!(serde_json::from_str::<Outcome>("\"exploded\"").is_err());
    }

    #[test]
    fn failures_are_the_kept_failed_state_and_errors() {
        for o in [
            Outcome::Kept,
            Outcome::Restored,
            Outcome::Recovered,
            Outcome::Accepted,
            Outcome::Abandoned,
        ] {
            assert!(!o.is_failure(), "{o}");
        }
        assert!(Outcome::FailedKept.is_failure());
        assert!(Outcome::Failed(Kind::RestoreFailed).is_failure());
    }
}
