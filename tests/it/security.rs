//! The store is untrusted input (docs/security.md, the threat model): each attack of the red-team review
//! that needs only write access to the store (R2, R3, R4, the local part of R15, R17) is
//! performed here through the real binary, and shown to fail.

use crate::common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

/// A snapshot id that sorts after `id` (same time, larger suffix), so `latest` picks it.
fn later_id(id: &str) -> String {
    let (time, suffix) = id.rsplit_once('-').unwrap();
    let new = if suffix == "ffff" { "fffe" } else { "ffff" };
    assert_ne!(new, suffix);
    format!("{time}-{new}")
}

/// Copy snapshot `from` to `to` inside the env's store, with its artifact keys moved along
/// and `edit` applied to the manifest: what someone with write access to the store can do.
fn plant(env: &Env, from: &str, to: &str, edit: impl FnOnce(&mut Value)) {
    let src = env.path(&format!("backups/snapshots/{from}"));
    let dst = env.path(&format!("backups/snapshots/{to}"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let mpath = dst.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["id"] = Value::String(to.into());
    for t in m["targets"].as_array_mut().unwrap() {
        for a in t["artifacts"].as_array_mut().unwrap() {
            let k = a["key"].as_str().unwrap().replace(from, to);
            a["key"] = Value::String(k);
        }
    }
    edit(&mut m);
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Rename target 0's artifact to `file` in the planted snapshot `id` (manifest and file).
fn rename_artifact(env: &Env, id: &str, m: &mut Value, file: &str) {
    let a = &mut m["targets"][0]["artifacts"][0];
    let old = env.path(&format!("backups/{}", a["key"].as_str().unwrap()));
    let key = format!("snapshots/{id}/{file}");
    std::fs::rename(old, env.path(&format!("backups/{key}"))).unwrap();
    a["key"] = Value::String(key);
}

/// SHA-256 listing of every file under `dir`, for "untouched" assertions.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            let d = sha2::Sha256::digest(&bytes);
            out.push((e.path().display().to_string(), hex::encode(d)));
        }
    }
    out
}
use sha2::Digest as _;

/// A policy with one directory target `data` (and a victim directory beside the env).
fn dir_env() -> (Env, String) {
    let env = Env::new();
    env.write("data/owned.txt", "payload\n");
    env.write("victim/precious.txt", "precious\n");
    env.write(
        "guard.toml",
        "name = \"b1\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n",
    );
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    (env, r.stdout.trim().to_string())
}

#[test]
fn a_planted_manifest_naming_a_target_the_policy_lacks_is_shown_but_never_restored() {
    // R2, dir variant: a copy of a real snapshot whose target is renamed "evil" and pointed at
    // a directory outside the policy.
    let (env, id) = dir_env();
    let victim = env.path("victim");
    let before = tree(&victim);
    let new = later_id(&id);
    plant(&env, &id, &new, |m| {
        m["targets"][0]["name"] = Value::String("evil".into());
        m["targets"][0]["source"] = Value::String(victim.display().to_string());
    });
    let mut m: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path(&format!("backups/snapshots/{new}/manifest.json"))).unwrap(),
    )
    .unwrap();
    rename_artifact(&env, &new, &mut m, "evil.tar.gz");
    std::fs::write(
        env.path(&format!("backups/snapshots/{new}/manifest.json")),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();

    // Listed and shown (read-only inspection works) ...
    let list = env.guard(&["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains(&new), "{list:?}");
    let show = env.guard(&["show", &new]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(show.all().contains("evil"), "{show:?}");
    // ... and never restored, by id or as `latest`.
    for which in [new.as_str(), "latest"] {
        let r = env.guard(&["restore", which, "--yes"]);
        assert_eq!(r.code, 64, "{r:?}");
        assert!(r.stderr.contains("which the policy does not name"), "{r:?}");
        assert!(r.stderr.contains("evil"), "{r:?}");
    }
    assert_eq!(tree(&victim), before, "the victim directory is untouched");
    assert!(env.path("victim/precious.txt").exists());
}

#[test]
fn a_planted_manifest_pointing_a_policy_target_elsewhere_or_changing_its_kind_is_refused() {
    // R2, sqlite variant: the policy's own target name, but the record's source is a file
    // outside the policy, and a raw-file artifact of attacker-chosen bytes.
    let env = simple_env("");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let victim = env.write("victim.conf", "root:settings\n");
    let new = later_id(&id);
    plant(&env, &id, &new, |m| {
        m["targets"][0]["source"] = Value::String(victim.display().to_string());
        m["targets"][0]["meta"] = serde_json::json!({});
    });
    let r = env.guard(&["restore", &new, "--yes"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("but the policy's target is"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:settings\n");

    // The same name with another kind is refused too.
    let other = format!("{}-fffd", new.rsplit_once('-').unwrap().0);
    plant(&env, &id, &other, |m| {
        m["targets"][0]["kind"] = Value::String("dir".into());
        m["targets"][0]["source"] = Value::String(env.path("").display().to_string());
    });
    let r = env.guard(&["restore", &other, "--yes"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("is a sqlite in the policy but a dir in the snapshot"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:settings\n");
    assert!(env.path("app.db").is_file());
}

#[test]
fn a_planted_journal_cannot_make_recover_write_outside_the_policy() {
    // R2, recover variant: a journal of an "interrupted" run whose pre-run snapshot is the
    // planted one pushes the operator into `guard recover`.
    let (env, id) = dir_env();
    let victim = env.path("victim");
    let before = tree(&victim);
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    let new = later_id(&id);
    plant(&env, &id, &new, |m| {
        m["targets"][0]["name"] = Value::String("evil".into());
        m["targets"][0]["source"] = Value::String(victim.display().to_string());
    });
    let runs = env.path("backups/runs");
    let real = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(real.join("journal.json")).unwrap()).unwrap();
    let run_id = later_id(j["run_id"].as_str().unwrap());
    j["run_id"] = Value::String(run_id.clone());
    j["phase"] = Value::String("command-running".into());
    j["snapshot_id"] = Value::String(new.clone());
    j["outcome"] = Value::Null;
    j["exit_code"] = Value::Null;
    j["pid"] = serde_json::json!(999_999_999u32);
    std::fs::create_dir_all(runs.join(&run_id)).unwrap();
    std::fs::write(runs.join(&run_id).join("journal.json"), serde_json::to_vec(&j).unwrap()).unwrap();

    let r = env.guard(&["recover", "--yes"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("which the policy does not name"), "{r:?}");
    assert_eq!(tree(&victim), before, "the victim directory is untouched");
}

#[test]
fn drill_and_verify_never_write_outside_the_store_through_a_target_name() {
    // R3: a target name with `..` components (dir target, `guard drill`) or an absolute one
    // (sqlite target, `guard verify`, which restores into scratch too).
    let (env, id) = dir_env();
    let escape = env.path("drill-escape");
    let new = later_id(&id);
    let traversal = format!("../../../../../../../..{}", escape.display());
    plant(&env, &id, &new, |m| {
        m["targets"][0]["name"] = Value::String(traversal.clone());
    });
    for args in [vec!["drill", new.as_str()], vec!["verify", new.as_str()]] {
        let r = env.guard(&args);
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        assert!(!escape.exists(), "{args:?} wrote {}", escape.display());
    }
    // `drill` with no id skips the planted newest snapshot, saying so, and drills the real one.
    let r = env.guard(&["drill"]);
    assert!(!escape.exists(), "drill wrote {}", escape.display());
    assert!(r.stderr.contains(&format!("skipping snapshot {new}")), "{r:?}");
    assert!(r.stdout.contains(&format!("of snapshot {id}")), "{r:?}");
    let r = env.guard(&["verify", &new]);
    assert!(r.stderr.contains("is not a valid name"), "{r:?}");

    let env = simple_env("");
    let r = env.guard(&["snapshot"]);
    let id = r.stdout.trim().to_string();
    let escape = env.path("verify-escape");
    let new = later_id(&id);
    plant(&env, &id, &new, |m| {
        m["targets"][0]["name"] = Value::String(escape.display().to_string());
    });
    for args in [vec!["verify", new.as_str()], vec!["drill", new.as_str()]] {
        let r = env.guard(&args);
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        assert!(!env.path("verify-escape.db").exists(), "{args:?}: {r:?}");
    }
    // The genuine snapshot still verifies and drills.
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.guard(&["drill", &id]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_symlinked_or_hard_linked_lock_file_is_refused_and_its_target_untouched() {
    // R4: a link planted at STORE/locks/POLICY.lock.
    for hard in [false, true] {
        let env = simple_env("");
        let victim = env.write("victim-lockfile", "important content\n");
        let locks = env.path("backups/locks");
        std::fs::create_dir_all(&locks).unwrap();
        std::fs::set_permissions(env.path("backups"), std::fs::Permissions::from_mode(0o700)).unwrap();
        if hard {
            std::fs::hard_link(&victim, locks.join("simple.lock")).unwrap();
        } else {
            std::os::unix::fs::symlink(&victim, locks.join("simple.lock")).unwrap();
        }
        for args in [
            vec!["snapshot"],
            vec!["--yes", "--", "true"],
            vec!["status"],
            vec!["prune"],
        ] {
            let r = env.guard(&args);
            assert_eq!(
                std::fs::read_to_string(&victim).unwrap(),
                "important content\n",
                "{args:?} changed the lock's target: {r:?}"
            );
            if args[0] != "status" {
                assert_eq!(r.code, 65, "{args:?}: {r:?}");
                let why = if hard { "hard links" } else { "symbolic link" };
                assert!(r.stderr.contains(why), "{args:?}: {r:?}");
            }
        }
    }
}

#[test]
fn symlinked_store_directories_are_refused_and_nothing_lands_where_they_point() {
    // R4: links planted in place of the store's own directories.
    for sub in ["tmp", "snapshots", "runs", "locks"] {
        let env = simple_env("");
        let outside = env.path("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(env.path("backups")).unwrap();
        std::os::unix::fs::symlink(&outside, env.path(&format!("backups/{sub}"))).unwrap();
        for args in [vec!["snapshot"], vec!["--yes", "--", "true"]] {
            let r = env.guard(&args);
            assert_ne!(r.code, 0, "{sub}: {args:?}: {r:?}");
            assert!(r.stderr.contains("is a symbolic link"), "{sub}: {args:?}: {r:?}");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "{sub}: {args:?} wrote through the link"
            );
        }
    }
}

/// Every file and directory under `root` with a mode other than 0600 / 0700.
fn not_private(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in walkdir::WalkDir::new(root) {
        let Ok(e) = e else { continue }; // scratch may vanish while it is walked
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{:o} {}", mode, e.path().display()));
        }
    }
    bad
}

#[test]
fn under_umask_000_every_file_guard_writes_is_0600_and_every_directory_0700() {
    // R15, local part: scratch directories and copies, artifacts, manifests, journals, logs,
    // the lock and catalog.db with its -wal and -shm, whatever the umask.
    let env = lending_env("");
    let sh = |args: &str| {
        let mut c = std::process::Command::new("sh");
        c.current_dir(env.path(""))
            .arg("-c")
            .arg(format!("umask 000; exec {} {args}", guard_bin()))
            .env_remove("GUARD_POLICY")
            .stdin(Stdio::null());
        c
    };
    // While a snapshot is between its two targets, the SQLite copy is in scratch.
    let mut child = spawn_paused(sh("snapshot"), "snapshot-between-targets", &env.path("paused.pid"));
    let scratch: Vec<_> = std::fs::read_dir(env.path("backups/tmp")).unwrap().collect();
    assert!(!scratch.is_empty(), "a scratch directory exists during the snapshot");
    let bad = not_private(&env.path("backups"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(bad.is_empty(), "not private during the snapshot: {bad:#?}");

    // A catalog an older guard left world-readable is made private again.
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let p = env.path(&format!("backups/{f}"));
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    // A guarded run whose check fails (the lending policy wants new tables): the rescue and the
    // restore write under umask 000 too. The wrapped command keeps the caller's umask (0666).
    let out = sh("--yes -- sh -c 'echo x > made-by-command'").output().unwrap();
    assert_eq!(out.status.code(), Some(79), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(env.path("made-by-command"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666, "the command runs with the caller's umask");
    let out = sh("list").output().unwrap();
    assert!(out.status.success());
    assert!(env.path("backups/catalog.db-wal").exists() || env.path("backups/catalog.db").exists());
    let bad = not_private(&env.path("backups"));
    assert!(bad.is_empty(), "not private after a run: {bad:#?}");
}

/// Replace the tar artifact of target 0 of snapshot `id` with a gzip of `entries` (path, mode,
/// content; `None` content is a directory), fixing the manifest's checksums and file listing:
/// an artifact crafted by someone who can write the store.
fn craft_dir_artifact(env: &Env, id: &str, entries: &[(&str, u32, Option<&str>)], edit: impl FnOnce(&mut Value)) {
    craft_dir_artifact_owned(env, id, entries, 0, edit)
}

/// [`craft_dir_artifact`] with every tar header naming uid and gid `owner`.
fn craft_dir_artifact_owned(
    env: &Env,
    id: &str,
    entries: &[(&str, u32, Option<&str>)],
    owner: u64,
    edit: impl FnOnce(&mut Value),
) {
    let mpath = env.path(&format!("backups/snapshots/{id}/manifest.json"));
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    for (path, mode, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(1_700_000_000);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_cksum();
                b.append_data(&mut h, path, c.as_bytes()).unwrap();
                files.push(serde_json::json!({"path": path, "type": "file", "size": c.len(),
                    "sha256": hex::encode(sha2::Sha256::digest(c.as_bytes())), "mode": mode}));
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_cksum();
                b.append_data(&mut h, path, std::io::empty()).unwrap();
                files.push(serde_json::json!({"path": path, "type": "dir", "size": 0, "mode": mode}));
            }
        }
    }
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let t = &mut m["targets"][0];
    let a = &mut t["artifacts"][0];
    std::fs::write(env.path(&format!("backups/{}", a["key"].as_str().unwrap())), &gz).unwrap();
    a["bytes"] = serde_json::json!(gz.len());
    a["sha256"] = Value::String(hex::encode(sha2::Sha256::digest(&gz)));
    a["raw_bytes"] = serde_json::json!(raw.len());
    a["raw_sha256"] = Value::String(hex::encode(sha2::Sha256::digest(&raw)));
    t["files"] = Value::Array(files);
    t["fingerprints"] = serde_json::json!({});
    edit(&mut m);
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_crafted_dir_artifact_plants_no_setuid_file_and_cannot_chmod_or_chown_the_target_dir() {
    // R17: a snapshot (with no catalog witness) whose tar holds a setuid/setgid file and a
    // setgid directory, and whose record asks for the target directory to become 0777 and
    // be owned by uid/gid 4242.
    use std::os::unix::fs::MetadataExt;
    let (env, id) = dir_env();
    let data = env.path("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let live = std::fs::metadata(&data).unwrap();
    let new = later_id(&id);
    plant(&env, &id, &new, |_| {});
    craft_dir_artifact(
        &env,
        &new,
        &[
            ("owned.txt", 0o644, Some("payload\n")),
            ("shared", 0o2775, None),
            ("shared/suid-shell", 0o6755, Some("#!/bin/sh\nid\n")),
        ],
        |m| {
            let meta = &mut m["targets"][0]["meta"];
            meta["mode"] = Value::String("777".into());
            meta["uid"] = Value::String("4242".into());
            meta["gid"] = Value::String("4242".into());
        },
    );
    let r = env.guard(&["restore", &new, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("shared/suid-shell")).unwrap(),
        "#!/bin/sh\nid\n"
    );
    assert_eq!(mode_of(&data.join("shared/suid-shell")), 0o755, "setuid/setgid dropped");
    assert_eq!(
        mode_of(&data.join("shared")),
        0o775,
        "setgid dropped from the directory"
    );
    let now = std::fs::metadata(&data).unwrap();
    assert_eq!(mode_of(&data), 0o750, "the target dir keeps the live directory's mode");
    assert_eq!((now.uid(), now.gid()), (live.uid(), live.gid()), "and its owner");

    // A drill unpacks into scratch without the bits too (nothing setuid in the store's tmp/),
    // and passes: the content is what the manifest lists.
    let r = env.guard(&["drill", &new]);
    assert_eq!(r.code, 0, "{r:?}");

    // A policy that opts in (`keep_setid = true`) keeps the bits of a real setuid file.
    let env = Env::new();
    env.write("data/tool", "#!/bin/sh\n");
    std::fs::set_permissions(env.path("data/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    for (keep, want) in [("true", 0o4755), ("false", 0o755)] {
        env.write(
            "guard.toml",
            &format!(
                "name = \"b2\"\n[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\nkeep_setid = {keep}\n"
            ),
        );
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        let snap = r.stdout.trim().to_string();
        let r = env.guard(&["restore", &snap, "--yes"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(mode_of(&env.path("data/tool")), want, "keep_setid = {keep}");
        std::fs::set_permissions(env.path("data/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
}

/// A SQLite policy whose store has a key file (`[store] key_file`), the key generated by
/// `guard key generate`, and one snapshot.
fn keyed_env() -> (Env, String) {
    let env = Env::new();
    lending_db(&env.path("app.db"), 10);
    env.write(
        "guard.toml",
        "name = \"keyed\"\n[store]\npath = \"backups\"\nkey_file = \"store.key\"\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n",
    );
    let r = env.guard(&["key", "generate"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    (env, r.stdout.trim().to_string())
}

fn manifest_of(env: &Env, id: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(env.path(&format!("backups/snapshots/{id}/manifest.json"))).unwrap())
        .unwrap()
}

#[test]
fn guard_key_generate_writes_a_private_key_once() {
    let env = Env::new();
    let key = env.path("k/store.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let r = env.guard(&["key", "generate", key.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64, "{text:?}");
    assert!(text.trim().chars().all(|c| c.is_ascii_hexdigit()), "{text:?}");
    assert_eq!(mode_of(&key), 0o600);
    // Never over an existing key (that would orphan every snapshot it signed).
    let r = env.guard(&["key", "generate", key.to_str().unwrap()]);
    assert_eq!(r.code, 64, "{r:?}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    // A key file others can read is refused, saying how to fix it.
    let (env, _) = keyed_env();
    std::fs::set_permissions(env.path("store.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = env.guard(&["list"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("chmod 600"), "{r:?}");
}

#[test]
fn with_a_store_key_an_unsigned_or_tampered_manifest_is_refused_even_without_the_catalog() {
    let (env, id) = keyed_env();
    let m = manifest_of(&env, &id);
    assert_eq!(m["hmac"].as_str().map(str::len), Some(64), "{m}");
    // The guarded run's journal is signed too, and a signed snapshot restores.
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    let run = std::fs::read_dir(env.path("backups/runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let j: Value = serde_json::from_str(&std::fs::read_to_string(run.join("journal.json")).unwrap()).unwrap();
    assert_eq!(j["hmac"].as_str().map(str::len), Some(64), "{j}");
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The newest snapshot, so the planted copies below are `latest`.
    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();

    // Someone who can write the store: one copy with a changed field (the signature kept),
    // one with the signature removed. Both have valid checksums.
    let tampered = later_id(&id);
    plant(&env, &id, &tampered, |m| {
        m["label"] = Value::String("harmless".into());
    });
    let unsigned = format!("{}-fffd", id.rsplit_once('-').unwrap().0);
    plant(&env, &id, &unsigned, |m| {
        m.as_object_mut().unwrap().remove("hmac");
    });
    sql(&env.path("app.db"), "UPDATE user SET name = 'changed-after'");
    for _ in 0..2 {
        for (snap, why) in [
            (&tampered, "signature does not match the store key"),
            (&unsigned, "is not signed"),
        ] {
            let file = format!("snapshots/{snap}/manifest.json");
            for args in [
                vec!["restore", snap.as_str(), "--yes"],
                vec!["drill", snap.as_str()],
                vec!["verify", snap.as_str()],
            ] {
                let r = env.guard(&args);
                assert_eq!(r.code, 65, "{args:?}: {r:?}");
                assert!(r.stderr.contains(why) && r.stderr.contains(&file), "{args:?}: {r:?}");
            }
        }
        // Nothing was restored.
        assert_eq!(
            count(
                &env.path("app.db"),
                "SELECT count(*) FROM user WHERE name = 'changed-after'"
            ),
            10
        );
        // Deleting the catalog (and its witnesses) changes nothing.
        for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            let _ = std::fs::remove_file(env.path(&format!("backups/{f}")));
        }
    }
    // `restore latest` never picks them: refused (65), or passed over for a genuine snapshot.
    let r = env.guard(&["restore", "latest", "--yes"]);
    for snap in [&tampered, &unsigned] {
        let picked = r.stderr.contains(&format!("restoring snapshot {snap}"));
        assert!(!picked || r.code == 65, "{r:?}");
    }
    sql(&env.path("app.db"), "UPDATE user SET name = 'changed-after'");
    // Both are still listed and shown.
    let r = env.guard(&["show", &unsigned]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("NOT AUTHENTICATED"), "{r:?}");

    // --trust-unsigned uses it anyway, with a warning naming it.
    let r = env.guard(&["restore", &unsigned, "--yes", "--trust-unsigned"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("--trust-unsigned") && r.stderr.contains(&unsigned),
        "{r:?}"
    );
    assert_eq!(
        count(
            &env.path("app.db"),
            "SELECT count(*) FROM user WHERE name = 'changed-after'"
        ),
        0
    );
}

#[test]
fn guard_store_key_in_the_environment_signs_and_another_key_refuses() {
    let env = simple_env("");
    let key = "ab".repeat(32);
    let other = "cd".repeat(32);
    let run = |k: &str, args: &[&str]| -> Run { env.cmd(args).env("GUARD_STORE_KEY", k).output().unwrap().into() };
    let r = run(&key, &["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    assert!(manifest_of(&env, &id)["hmac"].is_string());
    let r = run(&key, &["verify", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(&other, &["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("signature does not match"), "{r:?}");
    let r = run(&key, &["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn with_a_store_key_a_planted_unsigned_journal_makes_recover_restore_nothing() {
    // A journal of an "interrupted" run, pointing at a genuine older snapshot, planted to make
    // `guard recover` roll the database back.
    let (env, id) = keyed_env();
    let r = env.guard(&["--yes", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    sql(&env.path("app.db"), "UPDATE user SET name = 'kept'");
    let runs = env.path("backups/runs");
    let real = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(real.join("journal.json")).unwrap()).unwrap();
    let run_id = later_id(j["run_id"].as_str().unwrap());
    j["run_id"] = Value::String(run_id.clone());
    j["phase"] = Value::String("command-running".into());
    j["snapshot_id"] = Value::String(id.clone());
    j["outcome"] = Value::Null;
    j["exit_code"] = Value::Null;
    j["pid"] = serde_json::json!(999_999_999u32);
    j.as_object_mut().unwrap().remove("hmac");
    std::fs::create_dir_all(runs.join(&run_id)).unwrap();
    std::fs::write(runs.join(&run_id).join("journal.json"), serde_json::to_vec(&j).unwrap()).unwrap();
    let r = env.guard(&["recover", "--yes"]);
    assert!(r.all().contains(&run_id), "the planted journal is named: {r:?}");
    assert_eq!(
        count(&env.path("app.db"), "SELECT count(*) FROM user WHERE name = 'kept'"),
        10,
        "{r:?}"
    );
}

/// `sqlite3 DB .dump`: restores are proven with the stock tool.
fn sqlite_dump(db: &Path) -> String {
    let o = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .expect("sqlite3 runs");
    assert!(o.status.success(), "sqlite3 .dump: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `"uid:gid mode"` of `p` (not following a link).
fn owner_mode(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    format!("{}:{} {:o}", m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

/// As root, a crafted directory artifact (every tar header naming uid/gid 4242, world-writable
/// modes) restored from the store — by swap (`path`) and in place (`exclude` set), without a
/// store key, and with one under `--trust-unsigned` — gives no file to 4242: an entry that
/// exists keeps its live owner and mode, a new one takes its parent's owner and the recorded
/// mode without world-write. A snapshot the key authenticates still restores recorded owners.
#[test]
fn as_root_a_crafted_dir_artifact_gives_no_file_away_and_entries_keep_their_live_owners() {
    if !running_as_root() {
        eprintln!("SKIPPED: giving files away needs root");
        return;
    }
    let chown = |p: &Path, o: u32, mode: u32| {
        std::os::unix::fs::lchown(p, Some(o), Some(o + 1)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for (layout, keyed) in [("swap", false), ("in place", false), ("swap", true), ("in place", true)] {
        let env = Env::new();
        env.write("data/a.txt", "a\n");
        env.write("data/sub/b.txt", "b\n");
        chown(&env.path("data"), 1500, 0o750);
        chown(&env.path("data/a.txt"), 1234, 0o640);
        chown(&env.path("data/sub"), 2000, 0o750);
        chown(&env.path("data/sub/b.txt"), 2000, 0o600);
        let exclude = if layout == "in place" {
            "exclude = [\"*.log\"]\n"
        } else {
            ""
        };
        let store = if keyed {
            "[store]\npath = \"backups\"\nkey_file = \"store.key\"\n"
        } else {
            "store = \"backups\"\n"
        };
        env.write(
            "guard.toml",
            &format!("name = \"own\"\n{store}[[target]]\nname = \"data\"\nkind = \"dir\"\npath = \"data\"\n{exclude}"),
        );
        if keyed {
            let r = env.guard(&["key", "generate"]);
            assert_eq!(r.code, 0, "{r:?}");
        }
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        let id = r.stdout.trim().to_string();
        let new = later_id(&id);
        plant(&env, &id, &new, |m| {
            m.as_object_mut().unwrap().remove("hmac");
        });
        craft_dir_artifact_owned(
            &env,
            &new,
            &[
                ("a.txt", 0o666, Some("crafted a\n")),
                ("newdir", 0o777, None),
                ("newdir/x.txt", 0o666, Some("x\n")),
                ("sub", 0o777, None),
                ("sub/b.txt", 0o666, Some("crafted b\n")),
                ("sub/new.txt", 0o664, Some("new\n")),
            ],
            4242,
            |_| {},
        );
        let mut args = vec!["restore", new.as_str(), "--yes"];
        if keyed {
            // The key refuses the unsigned copy; the operator overrides that, not the owners.
            let r = env.guard(&args);
            assert_eq!(r.code, 65, "{layout}: {r:?}");
            args.push("--trust-unsigned");
        }
        let r = env.guard(&args);
        assert_eq!(r.code, 0, "{layout} keyed={keyed}: {r:?}");
        let how = format!("{layout}, keyed = {keyed}");
        assert_eq!(
            std::fs::read_to_string(env.path("data/sub/b.txt")).unwrap(),
            "crafted b\n",
            "{how}"
        );
        let got: Vec<(&str, String)> = ["", "a.txt", "sub", "sub/b.txt", "sub/new.txt", "newdir", "newdir/x.txt"]
            .into_iter()
            .map(|p| (p, owner_mode(&env.path("data").join(p))))
            .collect();
        let want = [
            ("", "1500:1501 750"),
            ("a.txt", "1234:1235 640"),
            ("sub", "2000:2001 750"),
            ("sub/b.txt", "2000:2001 600"),
            ("sub/new.txt", "2000:2001 664"),
            ("newdir", "1500:1501 775"),
            ("newdir/x.txt", "1500:1501 664"),
        ]
        .map(|(p, o)| (p, o.to_string()));
        assert_eq!(got, want, "{how}");

        if keyed {
            // guard's own signed snapshot: the command's chown -R is undone.
            let r = env.guard(&["restore", &id, "--yes"]);
            assert_eq!(r.code, 0, "{r:?}");
            let before = owner_mode(&env.path("data/a.txt"));
            let r = env.guard(&[
                "--yes",
                "--",
                "sh",
                "-c",
                "chown -R 4242:4242 data; chmod 666 data/a.txt",
            ]);
            assert_eq!(r.code, 0, "{r:?}");
            let r = env.guard(&["restore", &id, "--yes"]);
            assert_eq!(r.code, 0, "{r:?}");
            assert_eq!(
                owner_mode(&env.path("data/a.txt")),
                before,
                "{how}: signed: recorded owner"
            );
            assert_eq!(owner_mode(&env.path("data/sub/b.txt")), "2000:2001 600", "{how}");
        }
    }
}

/// A planted SQLite manifest asking for mode 6777 and owner 4242 (no store key; and with one,
/// under `--trust-unsigned`): the restored database keeps the live file's mode and owner, or,
/// when the command removed it, gets the directory's owner and 0600. Signed: recorded ones.
#[test]
fn a_planted_sqlite_manifest_cannot_chmod_or_chown_the_database() {
    use std::os::unix::fs::MetadataExt;
    for keyed in [false, true] {
        let env = Env::new();
        lending_db(&env.path("db/app.db"), 5);
        std::fs::set_permissions(env.path("db/app.db"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let root = running_as_root();
        if root {
            std::os::unix::fs::chown(env.path("db"), Some(3000), Some(3001)).unwrap();
            std::os::unix::fs::chown(env.path("db/app.db"), Some(1234), Some(1235)).unwrap();
        }
        let store = if keyed {
            "[store]\npath = \"backups\"\nkey_file = \"store.key\"\n"
        } else {
            "store = \"backups\"\n"
        };
        env.write(
            "guard.toml",
            &format!("name = \"sq\"\n{store}[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"db/app.db\"\n"),
        );
        if keyed {
            let r = env.guard(&["key", "generate"]);
            assert_eq!(r.code, 0, "{r:?}");
        }
        let r = env.guard(&["snapshot"]);
        assert_eq!(r.code, 0, "{r:?}");
        let id = r.stdout.trim().to_string();
        let dump = sqlite_dump(&env.path("db/app.db"));
        let new = later_id(&id);
        plant(&env, &id, &new, |m| {
            m.as_object_mut().unwrap().remove("hmac");
            let meta = &mut m["targets"][0]["meta"];
            meta["mode"] = Value::String("6777".into());
            meta["uid"] = Value::String("4242".into());
            meta["gid"] = Value::String("4242".into());
        });
        let trust: &[&str] = if keyed { &["--trust-unsigned"] } else { &[] };
        let restore = |id: &str| {
            let mut args = vec!["restore", id, "--yes"];
            args.extend_from_slice(trust);
            env.guard(&args)
        };
        let live = owner_mode(&env.path("db/app.db"));
        let r = restore(&new);
        assert_eq!(r.code, 0, "keyed={keyed}: {r:?}");
        assert_eq!(sqlite_dump(&env.path("db/app.db")), dump);
        assert_eq!(
            owner_mode(&env.path("db/app.db")),
            live,
            "keyed={keyed}: the live file's"
        );
        // The command removed the database: the directory's owner, 0600.
        std::fs::remove_file(env.path("db/app.db")).unwrap();
        let r = restore(&new);
        assert_eq!(r.code, 0, "keyed={keyed}: {r:?}");
        assert_eq!(sqlite_dump(&env.path("db/app.db")), dump);
        let m = std::fs::metadata(env.path("db/app.db")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600, "keyed={keyed}");
        if root {
            assert_eq!((m.uid(), m.gid()), (3000, 3001), "keyed={keyed}: the directory's owner");
        }
        if keyed {
            // The signed snapshot restores what it recorded.
            std::fs::remove_file(env.path("db/app.db")).unwrap();
            let r = env.guard(&["restore", &id, "--yes"]);
            assert_eq!(r.code, 0, "{r:?}");
            assert_eq!(owner_mode(&env.path("db/app.db")), live, "signed: recorded");
        }
    }
}

/// Run `cmd` (a guard run) while scanning every process's argv for `secret`; the run's output.
fn run_scanning_argv(mut cmd: std::process::Command, secret: &str) -> Run {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut scans = 0;
    // Until guard has exited (its pid gone or a zombie).
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z")) {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) {
                let c = String::from_utf8_lossy(&cmdline);
                assert!(!c.contains(secret), "the password is in the argv of pid {p}: {c:?}");
            }
        }
        scans += 1;
    }
    let o = child.wait_with_output().unwrap();
    assert!(scans > 0);
    o.into()
}

/// `password_file` (a 0600 file) and `$PGPASSFILE` give guard the password of a
/// scram-sha-256 cluster whose URL holds none: a guarded run snapshots, runs a failing
/// migration and restores (pg_dump equal), and neither the password nor the file's content
/// reaches any process's argv (scanned in /proc while guard runs), guard's output or the
/// store. A group/world-readable password file or passfile is refused naming it (exit 64);
/// a URL with a password and a `password_file` too is refused.
#[test]
fn postgres_password_file_and_pgpassfile_authenticate_and_never_reach_argv() {
    use crate::common::pg::Cluster;
    let password = "pw-file-Zebra-8317";
    let cluster = Cluster::start_with_password(password);
    cluster.createdb("rent");
    cluster.psql(
        "rent",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
    );
    let before = cluster.dump("rent");
    let url = format!(
        "postgres://postgres@/rent?host={}&port={}",
        cluster.sock().display(),
        cluster.port
    );
    let psql = cluster.bin.join("psql");
    // The migration authenticates on its own (reading the file in the shell: not in argv).
    let migration = format!(
        "PGPASSWORD=$(head -n1 pw.txt) {} -X -q -v ON_ERROR_STOP=1 -h {} -p {} -U postgres -d rent -c 'DELETE FROM t WHERE id > 10'; exit 3",
        psql.display(),
        cluster.sock().display(),
        cluster.port
    );
    for how in ["password_file", "PGPASSFILE"] {
        let env = Env::new();
        let key = if how == "password_file" {
            "password_file = \"pw.txt\"\n"
        } else {
            ""
        };
        env.write(
            "guard.toml",
            &format!("name = \"pw\"\nstore = \"backups\"\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"{url}\"\n{key}"),
        );
        env.write("pw.txt", &format!("{password}\n"));
        env.write(
            "pgpass",
            &format!("# guard test\n*:*:other:postgres:wrong\n*:*:rent:postgres:{password}\n"),
        );
        for f in ["pw.txt", "pgpass"] {
            std::fs::set_permissions(env.path(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let guard = |args: &[&str]| {
            let mut c = env.cmd(args);
            c.env_remove("PGPASSWORD")
                .env_remove("PGPASSFILE")
                .env("HOME", env.path("."));
            if how == "PGPASSFILE" {
                c.env("PGPASSFILE", env.path("pgpass"));
            }
            c
        };
        let r = run_scanning_argv(guard(&["--yes", "--", "sh", "-c", &migration]), password);
        assert_eq!(r.code, 3, "{how}: {r:?}");
        assert_eq!(cluster.dump("rent"), before, "{how}: restored");
        let list: Run = guard(&["list"]).output().unwrap().into();
        assert_eq!(list.code, 0, "{list:?}");
        for out in [&r.stdout, &r.stderr, &list.stdout, &list.stderr] {
            assert!(!out.contains(password), "{how}: output holds the password: {out}");
        }
        for e in walkdir::WalkDir::new(env.path("backups")).into_iter().flatten() {
            if e.file_type().is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !bytes.windows(password.len()).any(|w| w == password.as_bytes()),
                    "{how}: {} holds the password",
                    e.path().display()
                );
            }
        }
        // A file others can read is refused, naming it and the fix; nothing runs.
        let file = if how == "password_file" { "pw.txt" } else { "pgpass" };
        std::fs::set_permissions(env.path(file), std::fs::Permissions::from_mode(0o640)).unwrap();
        let marker = env.path("ran");
        let r: Run = guard(&["--yes", "--", "touch", marker.to_str().unwrap()])
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 64, "{how}: {r:?}");
        assert!(
            r.stderr.contains(&env.path(file).display().to_string()) && r.stderr.contains("chmod 600"),
            "{how}: names the file and the fix: {r:?}"
        );
        assert!(!marker.exists(), "{how}: nothing ran");
    }
    // A password in the URL and a password_file: give it once.
    let env = Env::new();
    env.write("pw.txt", "x\n");
    env.write(
        "guard.toml",
        &format!(
            "name = \"pw\"\n[[target]]\nname = \"rent\"\nkind = \"postgres\"\nurl = \"{}\"\npassword_file = \"pw.txt\"\n",
            cluster.url("rent")
        ),
    );
    let r = env.guard(&["list"]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(
        r.stderr.contains("password_file") && r.stderr.contains("give it once"),
        "{r:?}"
    );
}

/// A new age identity: (the identity file's text, the recipient).
fn age_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    (
        format!("# public key: {public}\n{}\n", id.to_string().expose_secret()),
        public,
    )
}

fn has_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every file under `dir` (a store), read whole.
fn store_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// `[encryption]` with an age recipient, SQLite end to end: the artifact is `*.gz.age` (no
/// plaintext in the store: no SQLite header, no row text), the manifest records the recipient
/// and both layers; a failing guarded run is restored (sqlite3 .dump equal), drill and verify
/// pass, `verify --quick` needs no identity, and the stock `age` CLI decrypts it by hand. A
/// wrong or missing identity is a clear error (restore exit 65, database unchanged; a guarded
/// run refuses with 64 before anything), and a tampered ciphertext is refused.
#[test]
fn encrypted_snapshots_restore_drill_verify_and_decrypt_by_hand_with_age() {
    let env = Env::new();
    lending_db(&env.path("app.db"), 20);
    let (key, public) = age_identity();
    let (other_key, _) = age_identity();
    env.write("key.txt", &key);
    env.write("other.txt", &other_key);
    for f in ["key.txt", "other.txt"] {
        std::fs::set_permissions(env.path(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let policy = |identity: &str| {
        format!(
            "name = \"enc\"\nstore = \"backups\"\n[encryption]\nrecipients = [\"{public}\"]\n{identity}\n[[target]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n"
        )
    };
    env.write("guard.toml", &policy("identity_file = \"key.txt\""));
    let before = sqlite_dump(&env.path("app.db"));

    let r = env.guard(&["snapshot"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let m = manifest_of(&env, &id);
    let a = &m["targets"][0]["artifacts"][0];
    let file = env.path(&format!("backups/{}", a["key"].as_str().unwrap()));
    assert!(a["key"].as_str().unwrap().ends_with(".sqlite.gz.age"), "{a}");
    assert_eq!(a["encryption"]["scheme"], "age", "{a}");
    assert_eq!(a["encryption"]["recipients"], serde_json::json!([public]), "{a}");
    assert!(
        a["encryption"]["gz_sha256"].as_str().is_some_and(|s| s.len() == 64),
        "{a}"
    );
    assert!(std::fs::read(&file).unwrap().starts_with(b"age-encryption.org/v1\n"));
    for (p, bytes) in store_files(&env.path("backups")) {
        // The catalog is a SQLite file of its own (guard's index: ids, sizes, no data).
        let catalog = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("catalog.db"));
        let plain: &[&[u8]] = if catalog {
            &[b"u7@example.com"]
        } else {
            &[b"SQLite format 3", b"u7@example.com"]
        };
        for plain in plain {
            assert!(
                !bytes.windows(plain.len()).any(|w| w == *plain),
                "{} holds plaintext",
                p.display()
            );
        }
    }

    // By hand, with the stock tools.
    if has_tool("age") {
        let out = env.path("by-hand.db");
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i {} {} | gunzip > {}",
                env.path("key.txt").display(),
                file.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(sqlite_dump(&out), before, "age -d | gunzip gives the database");
    } else {
        eprintln!("SKIPPED the hand restore: no `age` CLI (scripts/test.sh installs the Debian package)");
    }

    // A guarded run whose command fails is restored.
    let r = env.guard(&[
        "--yes",
        "--",
        "sh",
        "-c",
        "sqlite3 app.db 'DELETE FROM payment; DELETE FROM loan'; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(sqlite_dump(&env.path("app.db")), before, "restored");
    let r = env.guard(&["drill", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sqlite_dump(&env.path("app.db")), before);

    // Without an identity: quick verify works, restore says what to set, a run refuses.
    env.write("guard.toml", &policy(""));
    let r = env.guard(&["verify", "--quick", &id]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains("identity_file") && r.stderr.contains("GUARD_AGE_IDENTITY"),
        "{r:?}"
    );
    let marker = env.path("ran");
    let r = env.guard(&["--yes", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(!marker.exists());
    // GUARD_AGE_IDENTITY, the key itself, does it.
    let secret = key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let r: Run = env
        .cmd(&["verify", &id])
        .env("GUARD_AGE_IDENTITY", &secret)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");

    // The wrong identity.
    env.write("guard.toml", &policy("identity_file = \"other.txt\""));
    sql(&env.path("app.db"), "DELETE FROM payment");
    let changed = sqlite_dump(&env.path("app.db"));
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(
        r.stderr.contains("cannot decrypt") && r.stderr.contains(&public),
        "{r:?}"
    );
    assert_eq!(sqlite_dump(&env.path("app.db")), changed, "nothing restored");
    let r = env.guard(&["verify", &id]);
    assert_eq!(r.code, 65, "{r:?}");
    let r = env.guard(&["--yes", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains(&public), "{r:?}");
    assert!(!marker.exists());
    // An identity file others can read is refused.
    env.write("guard.toml", &policy("identity_file = \"key.txt\""));
    std::fs::set_permissions(env.path("key.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = env.guard(&["restore", &id, "--yes"]);
    assert_eq!(r.code, 65, "{r:?}");
    assert!(r.stderr.contains("chmod 600"), "{r:?}");
    std::fs::set_permissions(env.path("key.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A tampered ciphertext (one byte in the middle) is refused, naming the file.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    for args in [
        vec!["verify", "--quick", id.as_str()],
        vec!["restore", id.as_str(), "--yes"],
    ] {
        let r = env.guard(&args);
        assert_eq!(r.code, 65, "{args:?}: {r:?}");
        assert!(r.stderr.contains(&file.display().to_string()), "{args:?}: {r:?}");
    }
    assert_eq!(sqlite_dump(&env.path("app.db")), changed, "nothing restored");
}
