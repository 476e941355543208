//! Property tests: the policy and manifest parsers never panic, whatever they are fed, and
//! every error they return names where it is.

use std::path::Path;

use guard::manifest::Manifest;
use proptest::prelude::*;

/// Fragments that make TOML close to a real policy, so the fuzzer gets past the TOML syntax
/// and into guard's own validation.
fn policyish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "name = \"p\"\n",
        "store = \"b\"\n",
        "store = \"s3://\"\n",
        "confirm = true\n",
        "[retention]\n",
        "keep_within = \"0s\"\n",
        "keep_last = 0\n",
        "keep_within = \"3x\"\n",
        "[compression]\n",
        "level = 99\n",
        "threads = 0\n",
        "[[target]]\n",
        "name = \"app\"\n",
        "name = \"..\"\n",
        "kind = \"sqlite\"\n",
        "kind = \"dir\"\n",
        "kind = \"postgres\"\n",
        "kind = \"s3\"\n",
        "kind = \"turso\"\n",
        "path = \"a.db\"\n",
        "url = \"postgres://u:p@h/d\"\n",
        "bucket = \"b\"\n",
        "clone_bucket = \"c\"\n",
        "organization = \"o\"\n",
        "database = \"d\"\n",
        "api_token = \"t\"\n",
        "format = \"tar\"\n",
        "[hooks]\n",
        "before = [\"true\"]\n",
        "[[check]]\n",
        "target = \"app\"\n",
        "untouched = []\n",
        "untouched = [\"t\"]\n",
        "sql = \"select 1\"\n",
        "expect = \">= x\"\n",
        "expect = \"== 6\"\n",
        "command = \"true\"\n",
        "x = ${\n",
        "y = \"${}\"\n",
        "é = 1\n",
        "\"\"\"\n",
        "[\n",
        "= =\n",
        "# comment ${NOPE}\n",
    ]);
    prop::collection::vec(atoms, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn policy_parser_never_panics_on_anything(s in "\\PC*") {
        let _ = guard::policy::parse(&s, Path::new("fuzz.toml"));
    }

    #[test]
    fn policy_parser_errors_name_the_file(s in policyish()) {
        if let Err(e) = guard::policy::parse(&s, Path::new("fuzz.toml")) {
            let msg = format!("{e:#}");
            prop_assert!(msg.contains("fuzz.toml"), "{}", msg);
        }
    }

    #[test]
    fn manifest_parser_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Manifest::from_json(&b, "fuzz");
    }

    #[test]
    fn manifest_parser_never_panics_on_mutated_manifests(pos in 0usize..2000, byte in any::<u8>(), cut in 0usize..2000) {
        let mut m = SAMPLE.as_bytes().to_vec();
        let i = pos % m.len();
        m[i] = byte;
        m.truncate(m.len() - cut % m.len());
        let _ = Manifest::from_json(&m, "fuzz");
    }
}

const SAMPLE: &str = r#"{
  "format": 1,
  "id": "20261123T164800.123Z-a3f2",
  "policy": "p",
  "kind": "pre-run",
  "created_at": "2026-11-23T16:48:00.123Z",
  "completed_at": "2026-11-23T16:48:01Z",
  "host": "h",
  "guard_version": "0.1.0",
  "command": ["true"],
  "targets": [{
    "name": "app", "kind": "sqlite", "source": "/x/app.db",
    "artifacts": [{"key": "snapshots/20261123T164800.123Z-a3f2/app.sqlite.gz", "format": "sqlite",
                   "bytes": 10, "sha256": "00", "raw_bytes": 20, "raw_sha256": "11"}],
    "fingerprints": {"user": {"rows": 3, "hash": "ab"}, "loan": {"rows": 1}},
    "files": [{"path": "a", "type": "file", "size": 1, "sha256": "cd", "mode": 420}],
    "tools": {"sqlite": "3.46.0"},
    "meta": {"mode": "644"}
  }]
}"#;

#[test]
fn the_sample_manifest_is_valid() {
    Manifest::from_json(SAMPLE.as_bytes(), "sample").unwrap();
}
