//! Turso's official npm clients against the local Turso fake (tests/fakes/turso_fake.py):
//! `@tursodatabase/api` 2.0.5, `@libsql/client` 0.18.0 and `@libsql/hrana-client` 0.10.0, pinned
//! in tests/turso_clients/package-lock.json and installed under target/turso-clients by
//! scripts/test.sh. The checks themselves are tests/turso_clients/check.mjs; any failure means
//! the fake drifted from what the official clients expect of the real service.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::turso::{TursoFake, API_TOKEN, ORG};

fn clients_dir() -> PathBuf {
    std::env::var_os("GUARD_TURSO_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/turso-clients"))
}

/// The version of an installed npm package.
fn installed(dir: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(String::from)
}

#[test]
fn official_turso_clients_agree_with_the_fake() {
    let dir = clients_dir();
    for (package, version) in [
        ("@tursodatabase/api", "2.0.5"),
        ("@libsql/client", "0.18.0"),
        ("@libsql/hrana-client", "0.10.0"),
    ] {
        assert_eq!(
            installed(&dir, package).as_deref(),
            Some(version),
            "{package} {version} is not installed in {}: run scripts/test.sh, which installs Turso's official clients there from the npm registry",
            dir.display()
        );
    }
    let script = dir.join("check.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/turso_clients/check.mjs"),
        &script,
    )
    .expect("copy check.mjs next to its node_modules");
    let fake = TursoFake::start();
    let out = Command::new("node")
        .arg(&script)
        .env("FAKE_API", &fake.api_url)
        .env("FAKE_ORG", ORG)
        .env("FAKE_TOKEN", API_TOKEN)
        .output()
        .expect("run node (scripts/test.sh installs it when missing)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "the official clients found the fake drifting from the real service:\n{stdout}\n{stderr}"
    );
}
